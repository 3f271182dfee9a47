"""Thin pipecat frame processors translating frames to SMS-core calls."""
