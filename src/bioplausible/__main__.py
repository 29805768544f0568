import os
import sys

# ``python -m bioplausible`` puts the working directory first on sys.path; a folder the user runs
# it from (a downloaded run) must not supply modules, as with the ``bioplausible`` command.
if sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from .cli import main

sys.exit(main())
