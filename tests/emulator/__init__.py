"""Tests of the LinkModel emulator (a package, so its module names cannot clash with other test tiers)."""
