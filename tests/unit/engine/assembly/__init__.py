"""Tests of dlzoo.engine.assembly."""
