# A miniature of FLAN v2's flan/v2/templates.py, in its file format, for flanpipe's tests. The
# sentences are written for these tests; they are not FLAN's. Like FLAN's file, it shares one list of
# turned-around templates among the chain-of-thought tasks by assignments after the literal, and goes
# on with code (a copy, a loop, a class, calls) that a reader of PATTERNS must neither run nor need.

"""Templates/Prompts."""
import copy
import dataclasses

from flan.v2 import flan_templates_branched as flan_templates

# pylint: disable=implicit-str-concat

# Zero-shot patterns.
PATTERNS = {
    "cot_gsm8k": [
        ("Work this out, one line at a time.\n{question}",
         "{chain_of_thought}\nHence {answer}."),
        ("Sum it up slowly: {question}",
         "{chain_of_thought} All told: {answer}."),
        ("{question} Show the steps"
         " before the result.", "Steps: {chain_of_thought}\nResult: {answer}"),
    ],
    "cot_creak": [
        ("Is this claim sound? {question}\nExplain, then say.",
         "{chain_of_thought} Verdict: {answer}."),
        ("Weigh the claim below.\n{question}",
         "Because {chain_of_thought}, the verdict is {answer}."),
    ],
    "cot_stream_general_input_inversion": [
        # CoT + Answer --> Question
        ("This reasoning ends in {answer}: {chain_of_thought}\nWhat was asked?",
         "Asked: {question}"),
        # Question + Answer --> CoT
        ("Asked: {question}\nAnswered: {answer}\nWhy?",
         "{chain_of_thought}"),
    ],
}

PATTERNS["cot_input_inversion_gsm8k"] = PATTERNS[
    "cot_stream_general_input_inversion"]
PATTERNS["cot_input_inversion_creak"] = PATTERNS[
    "cot_stream_general_input_inversion"]

PATTERNS_NO_OPTIONS = copy.deepcopy(PATTERNS)
PATTERNS_NO_OPTIONS.update(flan_templates.PATTERNS)
for t_name, templates in PATTERNS_NO_OPTIONS.items():
  for ti, (in_template, out_template) in enumerate(templates):
    PATTERNS_NO_OPTIONS[t_name][ti] = (in_template.replace("{options_}", ""),
                                       out_template)


@dataclasses.dataclass
class FewShotPattern:
  inputs: str
  targets: str


FEWSHOT_PATTERNS = {
    "cot_gsm8k": [
        FewShotPattern(inputs="{question}", targets="{chain_of_thought} So: {answer}."),
    ],
}
