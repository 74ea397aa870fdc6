"""``python -m xvec`` (used by torchrun) runs the CLI."""

from xvec.cli import main

main()
