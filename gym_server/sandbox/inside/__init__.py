"""Code that runs inside the sandbox. Standard library only, and nothing from the rest of the project: this
folder alone is mounted (read-only) into the sandbox, so what it imports is all the sandbox can see."""
