"""Tests of dlzoo.engine.recording."""
