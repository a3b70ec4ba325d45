"""python -m nnunet_export: the nnunet-export command line."""
import sys

from .cli import main

sys.exit(main())
