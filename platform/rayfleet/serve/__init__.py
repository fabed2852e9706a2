"""Serving trained checkpoints on Ray Serve behind the Open Inference Protocol (KServe v2 REST).

    loading     source (checkpoint URI | run | sweep) -> one verified checkpoint -> a torch model,
                loaded with `weights_only=True`; anything unverified is refused
    protocol    the OIP JSON tensor format: request parsing/validation, responses, metadata
    app         the FastAPI app (health, metadata, infer) over an `InferenceService`, which
                owns the model and its dynamic batching (`@serve.batch`)
    auth        the optional bearer-token check (spec.auth): where the token lives, and where not
    config      the one Serve config (pure: no Ray, FastAPI or torch) that `rayfleet serve`,
                `rayfleet render` (serveConfigV2) and the operator all deploy
    deployment  the Ray Serve runtime: the replica class and the application builder
    runtime     deploy / scale / status against a local or connected Serve
    client      a small HTTP client with retries and backoff (what `rayfleet predict` uses)
    evaluate    a dataset split classified over HTTP and offline (the quickstart's last step)

Heavy imports (torch, ray, fastapi) happen inside these modules, never here.
"""
