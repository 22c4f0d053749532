"""Training data: ``templatefix audit``'s engine and the same work as dataset transforms
(``datasets`` ``map``, Ray Data ``map_batches``)."""
