"""Words for the people in a caller's life, shared by every rule that asks "is this about someone else?".

The judges' recipients rule, the embedded judge, the reply reader and the variable extractor each
need to recognise "my wife", "su hija", "meine Kollegin". They read the same list from here, so a
word added for one (a relative, a carer, a Spanish or German form) is known to all.

* :data:`RELATIVES` and :data:`OTHERS` are English nouns, singular and plural forms listed out.
* :data:`PEOPLE_ES` and :data:`PEOPLE_DE` are the Spanish and German ones (lower case).
* :data:`PEOPLE` is all of them; :func:`alternation` turns a set into a regular-expression group.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["OTHERS", "PEOPLE", "PEOPLE_DE", "PEOPLE_EN", "PEOPLE_ES", "RELATIVES", "alternation"]

#: Family, partners and the household.
RELATIVES: frozenset[str] = frozenset({
    "wife", "husband", "partner", "spouse", "fiance", "fiancee", "fiancé", "fiancée", "girlfriend", "boyfriend",
    "mom", "mum", "mother", "dad", "father", "parent", "parents", "son", "daughter", "kid", "kids", "child",
    "children", "sister", "brother", "sibling", "siblings", "grandma", "grandmother", "grandpa", "grandfather",
    "aunt", "uncle", "cousin", "niece", "nephew", "family", "relative", "relatives",
})

#: Friends, people at work and people who look after someone.
OTHERS: frozenset[str] = frozenset({
    "friend", "friends", "neighbour", "neighbor", "roommate", "flatmate", "colleague", "coworker", "co-worker",
    "boss", "manager", "assistant", "secretary", "sitter", "babysitter", "nanny", "caregiver", "carer", "nurse",
    "doctor", "driver", "tenant", "landlord", "team", "student", "tutor", "lawyer", "accountant", "employer",
})

PEOPLE_EN: frozenset[str] = RELATIVES | OTHERS

PEOPLE_ES: frozenset[str] = frozenset({
    "esposa", "esposo", "marido", "mujer", "pareja", "novio", "novia", "amigo", "amiga", "madre", "mamá", "padre",
    "papá", "padres", "hijo", "hija", "hijos", "hijas", "hermano", "hermana", "hermanos", "hermanas", "abuelo",
    "abuela", "tío", "tía", "primo", "prima", "vecino", "vecina", "compañero", "compañera", "jefe", "jefa",
    "familia",
})

PEOPLE_DE: frozenset[str] = frozenset({
    "frau", "mann", "partner", "partnerin", "freund", "freundin", "mutter", "mama", "vater", "papa", "eltern",
    "sohn", "tochter", "kind", "kinder", "schwester", "bruder", "oma", "opa", "nachbar", "nachbarin", "kollege",
    "kollegin", "chef", "chefin", "familie",
})

#: Every person word, in every language the rules read.
PEOPLE: frozenset[str] = PEOPLE_EN | PEOPLE_ES | PEOPLE_DE


def alternation(words: Iterable[str]) -> str:
    """A non-capturing regex group matching any of ``words`` (longest first, so "kids" wins over "kid")."""
    return "(?:" + "|".join(re.escape(w) for w in sorted(set(words), key=lambda w: (-len(w), w))) + ")"
