"""Which agent profile a call gets: a phone number or page name mapped to a profile NAME.

The profiles themselves (persona, voice, greeting, tools, ...) live in one place, the orchestrator
(`orchestrator/profiles.py`, its `profiles_file`); the gateway only says which one a call asks for, in
`SessionConfig.profile`. The orchestrator refuses an unknown name with the list of its profiles, and the
gateway closes that call with code 1008 and the orchestrator's words.

`profile_routes` maps what a call carries (the `/phone/<key>` path, the stream's `customParameters.profile`,
the page's `?profile=`) to a profile name, so a number such as `+15550100` can point at `support` and be
re-pointed without touching the orchestrator; a key without a route is taken as the profile name itself.
"""

from __future__ import annotations

import json


class ProfileError(ValueError):
    """The route table is malformed; the message says what to fix."""


class ProfileRoutes:
    """Route keys (numbers, page names) to orchestrator profile names, checked once at start-up."""

    def __init__(self, routes: dict[str, str], default: str = "") -> None:
        self._routes = routes
        self.default = default

    @classmethod
    def from_settings(cls, routes: str, default: str) -> ProfileRoutes:
        if not routes.strip():
            return cls({}, default)
        try:
            loaded = json.loads(routes)
        except json.JSONDecodeError as exc:
            raise ProfileError(f"profile_routes is not valid JSON: {exc}") from exc
        if not isinstance(loaded, dict) or not all(isinstance(v, str) and v for v in loaded.values()):
            raise ProfileError('profile_routes must be a JSON object of non-empty profile names, e.g. '
                               '{"+15550100": "support", "shop": "sales"}')
        return cls({str(k): v for k, v in loaded.items()}, default)

    @property
    def keys(self) -> list[str]:
        return sorted(self._routes)

    def profile_for(self, key: str) -> str:
        """The profile name a call asks for (empty = the gateway's default, else the orchestrator's)."""
        key = key or self.default
        return self._routes.get(key, key)
