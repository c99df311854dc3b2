"""What each CLI command runs, files in and files out of a build folder; `build` chains them."""
