"""The Vertex AI emulator: an OAuth2 token endpoint for service-account keys, `generateContent` under a project
(bearer tokens) and in express mode (an API key), Dynamic Shared Quota 429s, batch prediction jobs, and the
small Cloud Storage JSON API those jobs read and write. It imports nothing of batcher outside
`batcher.emulator`; image generation and reply bodies come from the Gemini emulator beside it."""
