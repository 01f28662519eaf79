"""The ``amqp`` transport of asynctask (RabbitMQ (AMQP 0-9-1) through kombu)."""
