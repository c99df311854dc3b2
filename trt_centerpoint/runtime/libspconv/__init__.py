"""NVIDIA's libspconv (the runtime that reads scn files) driven from here: locate, gate, compile, run."""
