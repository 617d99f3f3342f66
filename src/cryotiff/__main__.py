"""``python -m cryotiff`` runs ``convert-to-tiff``."""

import sys

from .cli import main

sys.exit(main())
