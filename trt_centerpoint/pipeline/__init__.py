"""What `trt-centerpoint build` chains, one module per stage above export: compare, bench, report, build."""
