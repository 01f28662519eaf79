"""Workers for asynctask's tests: each records what it did in a ledger file."""
