"""torch_lstm_optim: a learned optimizer for PyTorch (Andrychowicz et al., 2016, "Learning to learn by gradient
descent by gradient descent"): a coordinatewise LSTM that reads each gradient and writes each update."""

from .network import CoordinatewiseLSTM, NetworkConfig
from .optimizer import LSTMOptimizer, NonFiniteGradientError
from .weights import StateDictError, WeightsError, bundled_names, load_network

__all__ = ["CoordinatewiseLSTM", "LSTMOptimizer", "NetworkConfig", "NonFiniteGradientError", "StateDictError",
           "WeightsError", "bundled_names", "load_network"]
__version__ = "0.1.0"
