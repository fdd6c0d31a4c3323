"""Tests of dlzoo.engine.training."""
