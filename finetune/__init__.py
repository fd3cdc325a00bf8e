"""K2-Chat SFT on TRL."""
