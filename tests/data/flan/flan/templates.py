"""Test templates in the format of FLAN's flan/templates.py (written for flanpipe's tests)."""

PATTERNS = {
    "rte": [
        ("{premise}\n\nDoes it follow that \"{hypothesis}\"?\n\n{options_}", "{answer}"),
        ("Passage: {premise}\n\nClaim: {hypothesis}n\n{options_}", "{answer}"),
        ("Write a passage and a claim it supports.", "{premise}\n\nClaim: {hypothesis}"),
    ],
    "anli": [
        ("{context}\nIs \"{hypothesis}\" true, going by that?\n{options_}", "{answer}"),
        ("Context: {context}\n\nHypothesis: {hypothesis}n\n{options_}", "{answer}"),
    ],
    "bool_q": [
        ("{text}\n\nAnswer yes or no: {question}?\n\n{options_}", "{answer}"),
        ("{title}\n\n{text}\n\n{question}?\n{options_}", "{answer}"),
    ],
    "arc": [
        ("Q: {question}\n{options_}\nA:", "{answer}"),
        ("Write a science question whose answer is \"{answer}\".", "{question}"),
    ],
    "winogrande": [
        ("Fill the blank:\n{context}\n\n{options_}", "{answer}"),
    ],
    "copa": [
        ("{premise}\nWhich is the more likely {question}?\n\n{options_}", "{answer}"),
    ],
    "wmt16_translate": [
        ("{sent2}\n\nIn {lang1}, please:", "{sent1}"),
        ("{sent1}\n\nIn {lang2}, please:", "{sent2}"),
    ],
    "common_gen": [
        ("Use every word of: {concepts}", "{target}"),
        ("Which words carry this sentence?\n\n{target}", "{concepts_newline}"),
    ],
    "samsum": [
        ("Chat:\n{dialogue}\n\nSum it up in a sentence or two.", "{summary}"),
        ("Invent a chat that ends with this summary: {summary}", "{dialogue}"),
    ],
}
