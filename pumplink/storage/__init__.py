"""Storage: the database connection, the models, migrations and the diagram of them."""
