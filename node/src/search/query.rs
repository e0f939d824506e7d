//! The user's full-text query language, kept small on purpose: words and "quoted phrases",
//! each optionally `+required` or `-excluded`, over the indexed text. No field syntax, ranges,
//! wildcards, regular expressions, fuzzy terms or boosts: a query's cost is bounded by its
//! clauses (`MAX_CLAUSES`, `MAX_PHRASE_TERMS`), so no request can make the shared index
//! expand a range over every term it holds. Words are split by the field's own tokenizer, as
//! the indexed text was; a word that splits into several terms (`a-b`) is a phrase.

use tantivy::query::{BooleanQuery, Occur, PhraseQuery, Query, TermQuery};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::tokenizer::TextAnalyzer;
use tantivy::Term;

use crate::error::NexusError;

/// Most words and phrases in one query.
pub const MAX_CLAUSES: usize = 32;
/// Most terms in one phrase.
pub const MAX_PHRASE_TERMS: usize = 16;

/// One word or phrase of a query, and how it must occur.
#[derive(Debug, PartialEq)]
struct Clause {
    occur: Occur,
    text: String,
}

fn split(query: &str) -> Result<Vec<Clause>, NexusError> {
    let mut clauses = Vec::new();
    let mut chars = query.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(&first) = chars.peek() else { break };
        let occur = match first {
            '+' => Occur::Must,
            '-' => Occur::MustNot,
            _ => Occur::Should,
        };
        if occur != Occur::Should {
            chars.next();
        }
        let mut text = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            for c in chars.by_ref() {
                if c == '"' {
                    break;
                }
                text.push(c);
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                text.push(c);
            }
        }
        if !text.trim().is_empty() {
            clauses.push(Clause { occur, text });
        }
    }
    if clauses.len() > MAX_CLAUSES {
        return Err(NexusError::invalid(
            "query",
            format!(
                "has {} words or phrases; at most {MAX_CLAUSES}",
                clauses.len()
            ),
        ));
    }
    Ok(clauses)
}

/// A parsed query: what tantivy runs, and the terms its score comes from.
pub struct TextQuery {
    pub query: Box<dyn Query>,
    /// The terms of its words and phrases, the excluded ones left out: what an item that
    /// matches the whole query holds.
    pub scoring: Vec<Term>,
}

/// The query for `text` over `field`, tokenized with `tokenizer`. A query whose words all
/// tokenize to nothing (punctuation only) matches nothing.
pub fn build(
    text: &str,
    field: Field,
    tokenizer: &mut TextAnalyzer,
) -> Result<TextQuery, NexusError> {
    let mut subqueries: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    let mut scoring = Vec::new();
    for clause in split(text)? {
        let mut terms = Vec::new();
        let mut stream = tokenizer.token_stream(&clause.text);
        while let Some(token) = stream.next() {
            terms.push(Term::from_field_text(field, &token.text));
        }
        if terms.len() > MAX_PHRASE_TERMS {
            return Err(NexusError::invalid(
                "query",
                format!(
                    "the phrase {:?} has {} terms; at most {MAX_PHRASE_TERMS}",
                    clause.text.chars().take(64).collect::<String>(),
                    terms.len()
                ),
            ));
        }
        if clause.occur != Occur::MustNot {
            scoring.extend(terms.iter().cloned());
        }
        let query: Box<dyn Query> = match terms.len() {
            0 => continue,
            1 => Box::new(TermQuery::new(
                terms.remove(0),
                IndexRecordOption::WithFreqs,
            )),
            _ => Box::new(PhraseQuery::new(terms)),
        };
        subqueries.push((clause.occur, query));
    }
    Ok(TextQuery {
        query: Box::new(BooleanQuery::new(subqueries)),
        scoring,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_phrases_and_modifiers_only() {
        let c = split(r#"  "launch deadline" +march -april x:y [a TO z] foo* "#).unwrap();
        let view: Vec<(Occur, &str)> = c.iter().map(|c| (c.occur, c.text.as_str())).collect();
        assert_eq!(
            view,
            vec![
                (Occur::Should, "launch deadline"),
                (Occur::Must, "march"),
                (Occur::MustNot, "april"),
                (Occur::Should, "x:y"),
                (Occur::Should, "[a"),
                (Occur::Should, "TO"),
                (Occur::Should, "z]"),
                (Occur::Should, "foo*"),
            ]
        );
        let many = vec!["w"; MAX_CLAUSES + 1].join(" ");
        let e = split(&many).unwrap_err();
        assert!(e.to_string().contains("query"), "{e}");
        assert!(split("\"unterminated phrase").unwrap().len() == 1);
    }

    #[test]
    fn ranges_and_wildcards_are_plain_words() {
        let mut schema = tantivy::schema::Schema::builder();
        let body = schema.add_text_field("body", tantivy::schema::TEXT);
        let index = tantivy::Index::create_in_ram(schema.build());
        let mut tokenizer = index.tokenizer_for_field(body).unwrap();
        let q = build("[a TO z] foo*", body, &mut tokenizer).unwrap();
        let text = format!("{:?}", q.query);
        assert!(!text.contains("Range"), "{text}");
        let long = format!("\"{}\"", vec!["w"; MAX_PHRASE_TERMS + 1].join(" "));
        assert!(build(&long, body, &mut tokenizer).is_err());
        let q = build(
            "launch \"new deadline\" -march +april",
            body,
            &mut tokenizer,
        )
        .unwrap();
        let words: Vec<String> = q
            .scoring
            .iter()
            .filter_map(|t| t.value().as_str().map(str::to_string))
            .collect();
        assert_eq!(words, ["launch", "new", "deadline", "april"]);
    }
}
