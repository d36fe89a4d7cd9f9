"""``python -m rasa_hred.cli``: the same as the ``rasa-hred`` console script."""

import sys

from rasa_hred.cli import main

sys.exit(main())
