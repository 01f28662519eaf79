"""Demo workers for the asynctask quick start."""
