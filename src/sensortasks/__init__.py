"""sensortasks."""
