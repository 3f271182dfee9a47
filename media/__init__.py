"""Inbound media (MMS) and audio helpers."""
