"""Graph transformers: GraphGPS training and GTSP-style post-training pruning of tokens, heads, layers and
weights (`compress graph`). Needs the optional `graph` dependencies (torch_geometric, rdkit, ogb, qc-b3db)."""
