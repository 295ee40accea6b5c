"""Small helpers shared by every package (file system, seeding)."""
