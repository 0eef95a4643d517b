//! Redaction against the labelled corpus made by scripts/pii/make_corpus.py: recall ≥ 0.98 and
//! precision ≥ 0.95 for every kind.

use std::collections::BTreeMap;

use sluice_govern::Redactor;

#[test]
fn recall_and_precision_per_kind_on_the_labelled_corpus() {
    let corpus: serde_json::Value =
        serde_json::from_str(include_str!("../pii_corpus.json")).unwrap();
    let samples = corpus.as_array().unwrap();
    assert!(samples.len() >= 200, "at least 200 samples");
    let r = Redactor::new(&[]).unwrap();
    // kind → (true positives, false positives, false negatives)
    let mut tally: BTreeMap<String, (u32, u32, u32)> = BTreeMap::new();
    let mut mistakes = Vec::new();
    for s in samples {
        let text = s["text"].as_str().unwrap();
        let mut expected: Vec<(String, String)> = s["spans"]
            .as_array()
            .unwrap()
            .iter()
            .map(|sp| (sp["kind"].as_str().unwrap().to_string(), sp["text"].as_str().unwrap().to_string()))
            .collect();
        for f in r.find(text) {
            let found = (f.kind.label(), text[f.start..f.end].to_string());
            if let Some(i) = expected.iter().position(|e| *e == found) {
                expected.swap_remove(i);
                tally.entry(found.0).or_default().0 += 1;
            } else {
                mistakes.push(format!("false {}: {:?} in {text:?}", found.0, found.1));
                tally.entry(found.0).or_default().1 += 1;
            }
        }
        for (kind, missed) in expected {
            mistakes.push(format!("missed {kind}: {missed:?} in {text:?}"));
            tally.entry(kind).or_default().2 += 1;
        }
    }
    let mut failing = Vec::new();
    for (kind, (tp, fp, fn_)) in &tally {
        let recall = f64::from(*tp) / f64::from(tp + fn_).max(1.0);
        let precision = f64::from(*tp) / f64::from(tp + fp).max(1.0);
        eprintln!("{kind:<7} recall {recall:.3} precision {precision:.3} (tp {tp}, fp {fp}, fn {fn_})");
        if recall < 0.98 || precision < 0.95 {
            failing.push(kind.clone());
        }
    }
    for m in &mistakes {
        eprintln!("{m}");
    }
    assert!(failing.is_empty(), "below target: {failing:?}");
    assert_eq!(tally.len(), 7, "every kind is in the corpus");
}
