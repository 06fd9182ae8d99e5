"""Analysis models: transcription, the quality gate, speaker verification, watermark, spectrograms."""
