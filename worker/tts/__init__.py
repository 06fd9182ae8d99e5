"""XTTS-v2 model pieces: checkpoint loading, text splitting, the GPT step, the vocoder, speech types."""
