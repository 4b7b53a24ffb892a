"""A browser as the peer of `secureconnect natlab --peer-cmd` (docs/natlab.md).

    sudo secureconnect natlab --peer-cmd "python3 examples/natlab/browser_peer.py"

The peer is the lab's own browser peer, ``secureconnect.natlab.browser`` (read it: headless
Chromium through Playwright, running the appliance's demo page, its verdict from the page's
state and getStats); ``secureconnect natlab --browsers chromium`` runs it as a column of its own.
"""

import sys

from secureconnect.natlab.browser import main

sys.exit(main())
