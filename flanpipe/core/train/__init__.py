"""Training's machinery: the optimizer (Adafactor under ZeRO-3), ranks and rendezvous, the launcher."""
