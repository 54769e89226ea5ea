"""The yardstick: a bare FastAPI endpoint that returns 100 rows held in memory."""

from fastapi import FastAPI

from tidegate.api.responses import JSON

ROWS = [{"id": i, "region": "US", "tier": "gold", "amount": i * 1.5, "name": f"row-{i}"} for i in range(100)]
app = FastAPI(default_response_class=JSON)


@app.get("/rows")
async def rows():
    # As cheap as FastAPI gets: no thread hop, no jsonable_encoder pass, orjson rendering.
    return JSON({"data": ROWS, "total_count": 100, "page": 1, "page_size": 100})


@app.get("/readyz")
async def readyz():
    # For the balancer's health check when the yardstick runs behind HAProxy (bench/scale.py).
    return JSON({"status": "ready"})
