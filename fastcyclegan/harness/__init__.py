"""The benchmark harness: the backend registry (`backends`), the deployment runtimes as peers (`runtimes`),
what a benchmark records beside its timings (`measure`) and the report (`report`). It imports the product
(`fastcyclegan`'s modules, op, loader, export); the product never imports it."""
