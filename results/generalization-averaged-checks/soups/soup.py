"""Uniform (or weighted) average of weight folders with the same config: python runs/soup.py OUT W1[:a] W2[:b] ..."""
import sys, torch
from torch_lstm_optim.weights import load_network
out, specs = sys.argv[1], sys.argv[2:]
nets, coef = [], []
for spec in specs:
    name, _, a = spec.partition(":")
    nets.append(load_network(name)); coef.append(float(a or 1))
total = sum(coef)
soup = load_network(specs[0].partition(":")[0])
assert all(n.config == soup.config for n in nets)
with torch.no_grad():
    for key, p in soup.state_dict().items():
        p.copy_(sum(c * n.state_dict()[key] for c, n in zip(coef, nets)) / total)
soup.save_pretrained(out)
print("wrote", out, [(s, c / total) for s, c in zip(specs, coef)])
