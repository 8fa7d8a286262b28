"""The ground every stage stands on: files written whole, locks, and the clock."""
