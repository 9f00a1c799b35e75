"""`python -m comfyfleet`: the command line."""

from comfyfleet.cli import main

if __name__ == "__main__":
    main()
