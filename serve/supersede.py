"""Which waiting or running requests a newer one makes stale.

Editors send a request at every pause in typing and seldom abort the previous
one, so a burst of keystrokes would queue work nobody reads.  A newer request
*supersedes* an older one when both come from the same client and the newer
prompt extends the older one.

Same client (`client_key`): the OpenAI `user` field when the request has one,
else the remote address and the User-Agent; both together with the bearer token
(hashed), so two users behind one address with different keys never cancel each
other.  Behind a proxy every user shares an address: send `user`, or turn the
feature off (`--no-supersede`).

Extends (`extends`): the new prompt starts with the old, non-empty one and is
longer (typing on), or,
for the Fauxpilot extension's moving window (past line 150 it sends the first
31 lines plus the 119 before the cursor, so a new line drops a line from the
middle), both prompts start with the same text and the old prompt's last
characters occur in the new one.  Two editor tabs of one client have different
prompts, so they never cancel each other.
"""
from __future__ import annotations

import hashlib

HEAD_CHARS = 256  # the windowed prompts of one file share at least this start...
TAIL_CHARS = 256  # ...and the old prompt's end (up to its cursor) occurs in the new one


def client_key(user, authorization: str | None, remote_ip: str | None,
               user_agent: str | None) -> str:
    """Who sent a request, for deciding which of its earlier requests are stale."""
    token = hashlib.sha256((authorization or "").encode()).hexdigest()[:16]
    if isinstance(user, str) and user:
        return f"{token}|user:{user}"
    return f"{token}|{remote_ip or ''}|{user_agent or ''}"


def extends(old: str, new: str) -> bool:
    """True when `new` is what the same editor asks after `old`, typing on.

    The same prompt again is not an extension: identical concurrent requests
    (a load test, parallel samples) are all answered."""
    if new == old or not old:
        return False
    if new.startswith(old):
        return True
    if len(old) <= HEAD_CHARS + TAIL_CHARS or len(new) <= HEAD_CHARS:
        return False
    return new[:HEAD_CHARS] == old[:HEAD_CHARS] and old[-TAIL_CHARS:] in new[HEAD_CHARS:]
