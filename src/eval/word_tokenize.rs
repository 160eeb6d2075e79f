//! nltk's `word_tokenize`, which CounterFact's fluency (ROME's and EasyEdit's `n_gram_entropy`)
//! counts n-grams of: a sentence split, then `NLTKWordTokenizer`'s regular-expression rules on
//! each sentence, ported rule for rule (nltk 3.10). No crate offers it; the rules need
//! look-around, hence fancy-regex (already built for the tokenizer).
//!
//! The sentence split is Punkt's as nltk runs it without a trained model: a break after a
//! word ending in '.', '?' or '!' (closing quotes and brackets may follow) and before the
//! next word, except after an ellipsis and after a number or a single letter followed by a
//! lower-case word. nltk's English model also knows learned abbreviations ("Mr.", "U.S."),
//! after which it does not break; here they break, which splits that period off as its own
//! token. `benches/baselines/fluency_words.py` measures the agreement with nltk.

use fancy_regex::Regex;
use std::sync::LazyLock;

/// (pattern, replacement) in nltk's order; replacements in fancy-regex's `${n}` syntax.
type Rules = Vec<(Regex, &'static str)>;

fn rules(list: &[(&str, &'static str)]) -> Rules {
    list.iter().map(|(p, r)| (Regex::new(p).unwrap_or_else(|e| panic!("word_tokenize rule {p}: {e}")), *r)).collect()
}

static STARTING_QUOTES: LazyLock<Rules> = LazyLock::new(|| {
    rules(&[
        ("([«“‘„]|[`]+)", " ${1} "),
        (r#"^""#, "``"),
        ("(``)", " ${1} "),
        (r#"([ \(\[{<])("|'{2})"#, "${1} `` "),
        (r"(?i)(?<!\w)(')(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)", "${1} "),
    ])
});

static PUNCTUATION: LazyLock<Rules> = LazyLock::new(|| {
    rules(&[
        // nltk writes the class's run possessive (`]*+`) against quadratic backtracking; the
        // longest run is the only split that ever matches, so a greedy one gives the same.
        (r#"([^\.])(\.)([\]\)}>"'»”’ ]*)\s*$"#, "${1} ${2} ${3} "),
        (r"([:,])([^\d])", " ${1} ${2}"),
        (r"([:,])$", " ${1} "),
        (r"\.{2,}", " ${0} "),
        (r"[;@#$%&]", " ${0} "),
        (r"[\u{2012}-\u{2015}]", " ${0} "),
        (r#"([^\.])(\.)([\]\)}>"']*)\s*$"#, "${1} ${2}${3} "),
        (r"[?!]", " ${0} "),
        (r"([^'])' ", "${1} ' "),
        (r"[*]", " ${0} "),
        (r"[\]\[\(\)\{\}<>]", " ${0} "),
        ("--", " -- "),
    ])
});

static ENDING_QUOTES: LazyLock<Rules> = LazyLock::new(|| {
    rules(&[
        ("([»”’])", " ${1} "),
        ("''", " '' "),
        ("\"", " '' "),
        (r"\s+", " "),
        (r"([^' ])('[sS]|'[mM]|'[dD]|') ", "${1} ${2} "),
        (r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ", "${1} ${2} "),
        // MacIntyre's contractions (nltk's CONTRACTIONS2 and CONTRACTIONS3).
        (r"(?i)\b(can)(not)\b", " ${1} ${2} "),
        (r"(?i)\b(d)('ye)\b", " ${1} ${2} "),
        (r"(?i)\b(gim)(me)\b", " ${1} ${2} "),
        (r"(?i)\b(gon)(na)\b", " ${1} ${2} "),
        (r"(?i)\b(got)(ta)\b", " ${1} ${2} "),
        (r"(?i)\b(lem)(me)\b", " ${1} ${2} "),
        (r"(?i)\b(more)('n)\b", " ${1} ${2} "),
        (r"(?i)\b(wan)(na)(?=\s)", " ${1} ${2} "),
        (r"(?i) ('t)(is)\b", " ${1} ${2} "),
        (r"(?i) ('t)(was)\b", " ${1} ${2} "),
    ])
});

static NUMBER: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^-?[\.,]?\d[\d,\.-]*$").expect("number pattern"));

fn apply(rules: &Rules, mut text: String) -> String {
    for (re, rep) in rules {
        // A rule that fails to run (fancy-regex's backtrack limit, never reached on prose)
        // leaves the text as it was rather than losing it.
        if let Ok(out) = re.try_replacen(&text, 0, *rep) {
            text = out.into_owned();
        }
    }
    text
}

/// One sentence's words, as `NLTKWordTokenizer().tokenize`.
fn sentence_words(sentence: &str) -> Vec<String> {
    let text = apply(&PUNCTUATION, apply(&STARTING_QUOTES, sentence.to_string()));
    let text = apply(&ENDING_QUOTES, format!(" {text} "));
    text.split_whitespace().map(str::to_string).collect()
}

/// The sentences of `text` (see the module comment), each with its inner whitespace.
pub fn sentences(text: &str) -> Vec<&str> {
    let chunks: Vec<(usize, &str)> = text.split_whitespace().map(|c| (c.as_ptr() as usize - text.as_ptr() as usize, c)).collect();
    let mut out = vec![];
    let mut start = None;
    for (i, &(at, chunk)) in chunks.iter().enumerate() {
        let first = *start.get_or_insert(at);
        let next = chunks.get(i + 1).map(|c| c.1);
        if next.is_some_and(|n| ends_sentence(chunk, n)) {
            out.push(&text[first..at + chunk.len()]);
            start = None;
        }
    }
    if let (Some(first), Some(&(at, last))) = (start, chunks.last()) {
        out.push(&text[first..at + last.len()]);
    }
    out
}

fn ends_sentence(chunk: &str, next: &str) -> bool {
    let body = chunk.trim_end_matches(['"', '\'', ')', ']', '}', '’', '”', '»', '‘', '“', '«']);
    if body.ends_with(['?', '!']) {
        return true;
    }
    let Some(word) = body.strip_suffix('.') else { return false };
    if word.ends_with('.') {
        return false; // an ellipsis
    }
    let initial = word.chars().count() == 1 && word.chars().all(char::is_alphabetic);
    let number = NUMBER.is_match(word).unwrap_or(false);
    let next_lower = next.chars().next().is_some_and(char::is_lowercase);
    let next_upper = next.chars().next().is_some_and(char::is_uppercase);
    !((initial || number) && next_lower || initial && next_upper)
}

/// `nltk.word_tokenize(text)`: the words of each sentence in turn.
pub fn word_tokenize(text: &str) -> Vec<String> {
    sentences(text).into_iter().flat_map(sentence_words).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<&str> {
        s.split(' ').collect()
    }

    /// Outputs of nltk 3.10's `word_tokenize` (copied from it, untrained Punkt): its
    /// documentation's example and the cases its rules exist for.
    #[test]
    fn matches_nltk_on_its_own_examples() {
        let cases = [
            (
                "Good muffins cost $3.88\nin New York.  Please buy me\ntwo of them.\nThanks.",
                "Good muffins cost $ 3.88 in New York . Please buy me two of them . Thanks .",
            ),
            ("They'll save and invest more.", "They 'll save and invest more ."),
            ("hi, my name can't hello,", "hi , my name ca n't hello ,"),
            ("\"I cannot believe it,\" she said -- really!", "`` I can not believe it , '' she said -- really !"),
            ("The city's people (and the Romans') wanna go.", "The city 's people ( and the Romans ' ) wan na go ."),
            ("A cutting-edge game-changer: 98.1% of 1,000 users...", "A cutting-edge game-changer : 98.1 % of 1,000 users ..."),
            ("It's 'quoted' here; isn't it? Yes!", "It 's ' quoted ' here ; is n't it ? Yes !"),
            ("'Tis the season. 'Twas a night.", "' Tis the season . ' Twas a night ."),
        ];
        for (text, want) in cases {
            assert_eq!(word_tokenize(text), words(want), "{text:?}");
        }
    }

    #[test]
    fn sentences_break_after_end_marks_not_after_ellipses_numbers_or_initials() {
        assert_eq!(sentences("One. Two! Three? four"), vec!["One.", "Two!", "Three?", "four"]);
        assert_eq!(sentences("Wait... then go."), vec!["Wait... then go."]);
        assert_eq!(sentences("Step 3. then more. J. Smith came."), vec!["Step 3. then more.", "J. Smith came."]);
        assert_eq!(sentences("He said \"Go.\" Then left."), vec!["He said \"Go.\"", "Then left."]);
        assert_eq!(sentences("  "), Vec::<&str>::new());
    }
}
