"""Numbers towards Teams in E.164 with `+`, from whatever format the carrier uses.

Microsoft ("Direct Routing - SIP protocol", Request-URI and From/To): Teams expects the called
and calling numbers as E.164 with a leading `+` (``sip:+15550100@...;user=phone``). Carriers
send national (``030 1234``), international with an access prefix (``004930 1234``) or E.164
without the `+` (``49301234``); :func:`to_e164` turns each into ``+49301234`` by the tenant's
country rules (:class:`~teams_sbc.teams.config.NumberRules`). Pure functions, no state.
"""

from __future__ import annotations

import re

from teams_sbc.sip.uri import unescape
from teams_sbc.teams.config import NumberRules

#: RFC 3966 visual separators, dropped before a number is judged.
_SEPARATORS = re.compile(r"[\-.() ]")
_E164 = re.compile(r"\+[1-9][0-9]{0,14}")
_DIGITS = re.compile(r"[0-9]+")


def to_e164(user: str, rules: NumberRules) -> str | None:
    """``user`` (a URI's user part, escapes allowed) as E.164 with `+`, or None when it is not
    a telephone number these rules can place (a name such as ``alice``, a short code, or a
    national number without a ``country_code``)."""
    number = _SEPARATORS.sub("", unescape(user))
    if number.startswith("+"):
        return number if _E164.fullmatch(number) else None
    if not _DIGITS.fullmatch(number):
        return None
    intl = rules.international_prefix
    national = rules.national_prefix
    if number.startswith(intl):
        candidate = "+" + number[len(intl) :]
    elif number.startswith(national):
        if rules.country_code is None:
            return None
        candidate = "+" + rules.country_code + number[len(national) :]
    else:
        # Digits with no dialling prefix: E.164 without its `+`, as carrier trunks send it.
        candidate = "+" + number
    return candidate if _E164.fullmatch(candidate) else None
