"""The Gemini API emulator: `generateContent` online and Batch Mode (Files API uploads, `batchGenerateContent`,
results download), under both `/v1beta` and `/v1`, with Google's error bodies and the faults the real service
shows. Like the LinkModel emulator beside it, it imports nothing of batcher outside `batcher.emulator`."""
