# gunicorn -c conf/gunicorn.conf.py  ==  pumplink serve
# The patch must come first: nothing may import peewee, psycopg2, paho or pykka before it.
from gevent import monkey

monkey.patch_all()

from pumplink.server.gunicorn import *  # noqa: E402,F401,F403
