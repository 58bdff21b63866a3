"""Tests of the LinkModel emulator, organised by behaviour."""
