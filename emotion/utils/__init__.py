"""Runtime helpers every layer uses (devices, precision, timing, atomic JSON): imports nothing from emotion."""
