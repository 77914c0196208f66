"""Test templates in the format of FLAN's flan/v2/flan_templates_branched.py (written for flanpipe's
tests): adjacent string literals joined, as Flan 2022's file writes its long templates."""

PATTERNS = {
    "rte": [
        ("{premise}\n\nDoes it follow that "
         "\"{hypothesis}\"?\n\n{options_}", "{answer}"),
        ("Passage: {premise}\n\n"
         "Claim: {hypothesis}n\n{options_}", "{answer}"),
    ],
}
