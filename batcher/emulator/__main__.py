"""``python -m batcher.emulator``: the emulator command without the rest of the CLI."""

from batcher.emulator.command import emulator

if __name__ == "__main__":
    emulator(prog_name="python -m batcher.emulator")
