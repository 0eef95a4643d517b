use serde_json::json;

use crate::*;

fn error_of(r: &Reply) -> (String, Option<String>, Option<String>) {
    let e = &r.json()["error"];
    assert!(e["message"].is_string() && e["type"].is_string(), "{}", r.text);
    (e["message"].as_str().unwrap().to_string(), e["param"].as_str().map(str::to_string), e["code"].as_str().map(str::to_string))
}

#[tokio::test]
async fn malformed_json_is_a_400() {
    let s = state();
    let r = call(&s, "POST", "/v1/chat/completions", "{\"model\": ").await;
    assert_eq!(r.status, 400);
    assert!(error_of(&r).0.contains("not valid JSON"));
    let r = call(&s, "POST", "/v1/completions", "[1, 2]").await;
    assert_eq!(r.status, 400);
    let huge = format!("{{\"model\": \"{MODEL}\", \"prompt\": \"{}\"}}", "x".repeat(3 << 20));
    let r = call(&s, "POST", "/v1/completions", &huge).await;
    assert_eq!(r.status, 413);
    error_of(&r);
}

#[tokio::test]
async fn invalid_values_name_the_parameter() {
    let s = state();
    let cases = [
        (json!({"model": MODEL, "prompt": "a", "temperature": "hot"}), "temperature"),
        (json!({"model": MODEL, "prompt": "a", "temperature": 3.5}), "temperature"),
        (json!({"model": MODEL, "prompt": "a", "top_p": 0}), "top_p"),
        (json!({"model": MODEL, "prompt": "a", "top_k": -5}), "top_k"),
        (json!({"model": MODEL, "prompt": "a", "n": 0}), "n"),
        (json!({"model": MODEL, "prompt": "a", "max_tokens": 0}), "max_tokens"),
        (json!({"model": MODEL, "prompt": "a", "max_tokens": -1}), "max_tokens"),
        (json!({"model": MODEL, "prompt": "a", "presence_penalty": 9}), "presence_penalty"),
        (json!({"model": MODEL, "prompt": "a", "stop": [""]}), "stop"),
        (json!({"model": MODEL}), "prompt"),
        (json!({"prompt": "a"}), "model"),
        (json!({"model": MODEL, "prompt": 5}), "prompt"),
    ];
    for (body, param) in cases {
        let r = post(&s, "/v1/completions", body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        assert_eq!(error_of(&r).1.as_deref(), Some(param), "{body}: {}", r.text);
    }
    let chat = [
        (json!({"model": MODEL, "messages": []}), "messages"),
        (json!({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}), "messages[0].role"),
        (json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}), "top_logprobs"),
        (json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 99}), "top_logprobs"),
        (json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0}), "max_completion_tokens"),
    ];
    for (body, param) in chat {
        let r = post(&s, "/v1/chat/completions", body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        assert_eq!(error_of(&r).1.as_deref(), Some(param), "{body}: {}", r.text);
    }
}

#[tokio::test]
async fn unknown_model_is_a_404() {
    let s = state();
    let r = post(&s, "/v1/chat/completions", json!({"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]})).await;
    assert_eq!(r.status, 404);
    assert_eq!(error_of(&r).2.as_deref(), Some("model_not_found"));
}

#[tokio::test]
async fn context_overflow_states_both_numbers_and_never_truncates() {
    let s = state();
    let r = post(&s, "/v1/completions", json!({"model": MODEL, "prompt": "hello there", "max_tokens": 8191})).await;
    assert_eq!(r.status, 400);
    let (msg, _, code) = error_of(&r);
    assert_eq!(code.as_deref(), Some("context_length_exceeded"));
    assert!(msg.contains("8192") && msg.contains("8191") && msg.contains("8193"), "{msg}");
    let long = "word ".repeat(9000);
    let r = post(&s, "/v1/chat/completions", json!({"model": MODEL, "messages": [{"role": "user", "content": long}]})).await;
    assert_eq!(r.status, 400);
    let (msg, _, code) = error_of(&r);
    assert_eq!(code.as_deref(), Some("context_length_exceeded"));
    assert!(msg.contains("8192"), "{msg}");
}

#[tokio::test]
async fn unknown_route_is_an_openai_error() {
    let s = state();
    let r = call(&s, "GET", "/v1/nothing", "").await;
    assert_eq!(r.status, 404);
    error_of(&r);
    let r = call(&s, "GET", "/v1/chat/completions", "").await;
    assert_eq!(r.status, 405);
    error_of(&r);
}
