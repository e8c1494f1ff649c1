CREATE TABLE public.activation (
    id integer NOT NULL,
    device_id integer NOT NULL,
    user_id integer,
    schedule_id integer,
    duration_s integer NOT NULL,
    state character varying(16) NOT NULL,
    reason character varying(64),
    ended_by character varying(64),
    source character varying(16) NOT NULL,
    command_id character varying(36),
    created_at timestamp without time zone NOT NULL,
    started_at timestamp without time zone,
    ends_at timestamp without time zone,
    ended_at timestamp without time zone
);
CREATE SEQUENCE public.activation_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.activation_id_seq OWNED BY public.activation.id;
CREATE TABLE public.audit_log (
    id integer NOT NULL,
    at timestamp without time zone NOT NULL,
    actor_id integer,
    action character varying(64) NOT NULL,
    target character varying(64),
    detail text
);
CREATE SEQUENCE public.audit_log_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.audit_log_id_seq OWNED BY public.audit_log.id;
CREATE TABLE public.device (
    id integer NOT NULL,
    name character varying(100) NOT NULL,
    protocol character varying(16) NOT NULL,
    daily_quota_minutes real,
    max_run_minutes real NOT NULL,
    created_at timestamp without time zone NOT NULL,
    deleted_at timestamp without time zone,
    off_owed_since timestamp without time zone,
    flapping_since timestamp without time zone
);
CREATE SEQUENCE public.device_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.device_id_seq OWNED BY public.device.id;
CREATE TABLE public.device_log (
    id integer NOT NULL,
    device_id integer NOT NULL,
    session_id integer,
    activation_id integer,
    event character varying(16) NOT NULL,
    cause character varying(32) NOT NULL,
    actor character varying(64),
    detail text,
    at timestamp without time zone NOT NULL
);
CREATE SEQUENCE public.device_log_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.device_log_id_seq OWNED BY public.device_log.id;
CREATE TABLE public.push_token (
    id integer NOT NULL,
    token character varying(200) NOT NULL,
    user_id integer NOT NULL,
    created_at timestamp without time zone NOT NULL
);
CREATE SEQUENCE public.push_token_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.push_token_id_seq OWNED BY public.push_token.id;
CREATE TABLE public.refresh_token (
    id integer NOT NULL,
    user_id integer NOT NULL,
    token_hash character varying(64) NOT NULL,
    family character varying(36) NOT NULL,
    created_at timestamp without time zone NOT NULL,
    expires_at timestamp without time zone NOT NULL,
    used_at timestamp without time zone,
    revoked_at timestamp without time zone
);
CREATE SEQUENCE public.refresh_token_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.refresh_token_id_seq OWNED BY public.refresh_token.id;
CREATE TABLE public.schedule (
    id integer NOT NULL,
    device_id integer NOT NULL,
    user_id integer NOT NULL,
    start_time timestamp without time zone NOT NULL,
    rrule text,
    duration_s integer NOT NULL,
    enabled boolean NOT NULL,
    next_run_at timestamp without time zone,
    created_at timestamp without time zone NOT NULL,
    next_run_index integer DEFAULT 0 NOT NULL
);
CREATE SEQUENCE public.schedule_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.schedule_id_seq OWNED BY public.schedule.id;
CREATE TABLE public.schedule_run (
    id integer NOT NULL,
    schedule_id integer NOT NULL,
    due_at timestamp without time zone NOT NULL,
    fired_at timestamp without time zone NOT NULL,
    outcome character varying(32) NOT NULL,
    detail text,
    activation_id integer
);
CREATE SEQUENCE public.schedule_run_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.schedule_run_id_seq OWNED BY public.schedule_run.id;
CREATE TABLE public.schema_version (
    version integer NOT NULL,
    applied_at timestamp without time zone NOT NULL
);
CREATE TABLE public.sent_notification (
    id integer NOT NULL,
    event_key character varying(100) NOT NULL,
    token character varying(200) NOT NULL,
    status character varying(16) NOT NULL,
    detail text,
    created_at timestamp without time zone NOT NULL
);
CREATE SEQUENCE public.sent_notification_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.sent_notification_id_seq OWNED BY public.sent_notification.id;
CREATE TABLE public.session (
    id integer NOT NULL,
    device_id integer NOT NULL,
    activation_id integer,
    user_id integer,
    started_at timestamp without time zone NOT NULL,
    ended_at timestamp without time zone,
    intended_s integer,
    actual_s real,
    start_cause character varying(32) NOT NULL,
    end_reason character varying(32)
);
CREATE SEQUENCE public.session_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.session_id_seq OWNED BY public.session.id;
CREATE TABLE public."user" (
    id integer NOT NULL,
    email character varying(254) NOT NULL,
    password_hash character varying(100) NOT NULL,
    role character varying(16) NOT NULL,
    daily_quota_minutes real,
    created_at timestamp without time zone NOT NULL
);
CREATE SEQUENCE public.user_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.user_id_seq OWNED BY public."user".id;
ALTER TABLE ONLY public.activation ALTER COLUMN id SET DEFAULT nextval('public.activation_id_seq'::regclass);
ALTER TABLE ONLY public.audit_log ALTER COLUMN id SET DEFAULT nextval('public.audit_log_id_seq'::regclass);
ALTER TABLE ONLY public.device ALTER COLUMN id SET DEFAULT nextval('public.device_id_seq'::regclass);
ALTER TABLE ONLY public.device_log ALTER COLUMN id SET DEFAULT nextval('public.device_log_id_seq'::regclass);
ALTER TABLE ONLY public.push_token ALTER COLUMN id SET DEFAULT nextval('public.push_token_id_seq'::regclass);
ALTER TABLE ONLY public.refresh_token ALTER COLUMN id SET DEFAULT nextval('public.refresh_token_id_seq'::regclass);
ALTER TABLE ONLY public.schedule ALTER COLUMN id SET DEFAULT nextval('public.schedule_id_seq'::regclass);
ALTER TABLE ONLY public.schedule_run ALTER COLUMN id SET DEFAULT nextval('public.schedule_run_id_seq'::regclass);
ALTER TABLE ONLY public.sent_notification ALTER COLUMN id SET DEFAULT nextval('public.sent_notification_id_seq'::regclass);
ALTER TABLE ONLY public.session ALTER COLUMN id SET DEFAULT nextval('public.session_id_seq'::regclass);
ALTER TABLE ONLY public."user" ALTER COLUMN id SET DEFAULT nextval('public.user_id_seq'::regclass);
INSERT INTO public.device VALUES (1, 'Motor Pump', 'pumplink', NULL, 60, '2026-12-03 12:58:25.756029', NULL, NULL, NULL);
INSERT INTO public.schema_version VALUES (1, '2026-12-03 12:58:25.757356');
INSERT INTO public.schema_version VALUES (2, '2026-12-03 12:58:25.779187');
INSERT INTO public.schema_version VALUES (3, '2026-12-03 12:58:25.822504');
SELECT pg_catalog.setval('public.activation_id_seq', 1, false);
SELECT pg_catalog.setval('public.audit_log_id_seq', 1, false);
SELECT pg_catalog.setval('public.device_id_seq', 1, true);
SELECT pg_catalog.setval('public.device_log_id_seq', 1, false);
SELECT pg_catalog.setval('public.push_token_id_seq', 1, false);
SELECT pg_catalog.setval('public.refresh_token_id_seq', 1, false);
SELECT pg_catalog.setval('public.schedule_id_seq', 1, false);
SELECT pg_catalog.setval('public.schedule_run_id_seq', 1, false);
SELECT pg_catalog.setval('public.sent_notification_id_seq', 1, false);
SELECT pg_catalog.setval('public.session_id_seq', 1, false);
SELECT pg_catalog.setval('public.user_id_seq', 1, false);
ALTER TABLE ONLY public.activation
    ADD CONSTRAINT activation_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.audit_log
    ADD CONSTRAINT audit_log_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.device_log
    ADD CONSTRAINT device_log_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.device
    ADD CONSTRAINT device_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.push_token
    ADD CONSTRAINT push_token_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.refresh_token
    ADD CONSTRAINT refresh_token_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.schedule
    ADD CONSTRAINT schedule_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.schedule_run
    ADD CONSTRAINT schedule_run_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.schema_version
    ADD CONSTRAINT schema_version_pkey PRIMARY KEY (version);
ALTER TABLE ONLY public.sent_notification
    ADD CONSTRAINT sent_notification_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.session
    ADD CONSTRAINT session_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public."user"
    ADD CONSTRAINT user_pkey PRIMARY KEY (id);
CREATE INDEX activation_device_id ON public.activation USING btree (device_id);
CREATE INDEX activation_device_id_state ON public.activation USING btree (device_id, state);
CREATE INDEX activation_schedule_id ON public.activation USING btree (schedule_id);
CREATE INDEX activation_user_id ON public.activation USING btree (user_id);
CREATE INDEX activation_user_id_created_at ON public.activation USING btree (user_id, created_at);
CREATE INDEX audit_log_actor_id ON public.audit_log USING btree (actor_id);
CREATE INDEX audit_log_at ON public.audit_log USING btree (at);
CREATE INDEX device_log_activation_id ON public.device_log USING btree (activation_id);
CREATE INDEX device_log_device_id ON public.device_log USING btree (device_id);
CREATE INDEX device_log_device_id_at ON public.device_log USING btree (device_id, at);
CREATE INDEX device_log_session_id ON public.device_log USING btree (session_id);
CREATE UNIQUE INDEX push_token_token ON public.push_token USING btree (token);
CREATE INDEX push_token_user_id ON public.push_token USING btree (user_id);
CREATE INDEX refresh_token_family ON public.refresh_token USING btree (family);
CREATE UNIQUE INDEX refresh_token_token_hash ON public.refresh_token USING btree (token_hash);
CREATE INDEX refresh_token_user_id ON public.refresh_token USING btree (user_id);
CREATE INDEX schedule_device_id ON public.schedule USING btree (device_id);
CREATE INDEX schedule_next_run_at ON public.schedule USING btree (next_run_at);
CREATE INDEX schedule_run_activation_id ON public.schedule_run USING btree (activation_id);
CREATE INDEX schedule_run_schedule_id ON public.schedule_run USING btree (schedule_id);
CREATE UNIQUE INDEX schedule_run_schedule_id_due_at ON public.schedule_run USING btree (schedule_id, due_at);
CREATE INDEX schedule_user_id ON public.schedule USING btree (user_id);
CREATE UNIQUE INDEX sent_notification_event_key_token ON public.sent_notification USING btree (event_key, token);
CREATE INDEX session_activation_id ON public.session USING btree (activation_id);
CREATE INDEX session_device_id ON public.session USING btree (device_id);
CREATE INDEX session_device_id_started_at ON public.session USING btree (device_id, started_at);
CREATE UNIQUE INDEX session_one_open_per_device ON public.session USING btree (device_id) WHERE (ended_at IS NULL);
CREATE INDEX session_user_id ON public.session USING btree (user_id);
CREATE INDEX session_user_id_started_at ON public.session USING btree (user_id, started_at);
CREATE UNIQUE INDEX user_email ON public."user" USING btree (email);
CREATE INDEX user_role ON public."user" USING btree (role);
ALTER TABLE ONLY public.activation
    ADD CONSTRAINT activation_device_id_fkey FOREIGN KEY (device_id) REFERENCES public.device(id) ON DELETE CASCADE;
ALTER TABLE ONLY public.activation
    ADD CONSTRAINT activation_schedule_id_fkey FOREIGN KEY (schedule_id) REFERENCES public.schedule(id) ON DELETE SET NULL;
ALTER TABLE ONLY public.activation
    ADD CONSTRAINT activation_user_id_fkey FOREIGN KEY (user_id) REFERENCES public."user"(id) ON DELETE SET NULL;
ALTER TABLE ONLY public.audit_log
    ADD CONSTRAINT audit_log_actor_id_fkey FOREIGN KEY (actor_id) REFERENCES public."user"(id) ON DELETE SET NULL;
ALTER TABLE ONLY public.device_log
    ADD CONSTRAINT device_log_activation_id_fkey FOREIGN KEY (activation_id) REFERENCES public.activation(id) ON DELETE SET NULL;
ALTER TABLE ONLY public.device_log
    ADD CONSTRAINT device_log_device_id_fkey FOREIGN KEY (device_id) REFERENCES public.device(id) ON DELETE CASCADE;
ALTER TABLE ONLY public.device_log
    ADD CONSTRAINT device_log_session_id_fkey FOREIGN KEY (session_id) REFERENCES public.session(id) ON DELETE SET NULL;
ALTER TABLE ONLY public.push_token
    ADD CONSTRAINT push_token_user_id_fkey FOREIGN KEY (user_id) REFERENCES public."user"(id) ON DELETE CASCADE;
ALTER TABLE ONLY public.refresh_token
    ADD CONSTRAINT refresh_token_user_id_fkey FOREIGN KEY (user_id) REFERENCES public."user"(id) ON DELETE CASCADE;
ALTER TABLE ONLY public.schedule
    ADD CONSTRAINT schedule_device_id_fkey FOREIGN KEY (device_id) REFERENCES public.device(id) ON DELETE CASCADE;
ALTER TABLE ONLY public.schedule_run
    ADD CONSTRAINT schedule_run_activation_id_fkey FOREIGN KEY (activation_id) REFERENCES public.activation(id) ON DELETE SET NULL;
ALTER TABLE ONLY public.schedule_run
    ADD CONSTRAINT schedule_run_schedule_id_fkey FOREIGN KEY (schedule_id) REFERENCES public.schedule(id) ON DELETE CASCADE;
ALTER TABLE ONLY public.schedule
    ADD CONSTRAINT schedule_user_id_fkey FOREIGN KEY (user_id) REFERENCES public."user"(id) ON DELETE CASCADE;
ALTER TABLE ONLY public.session
    ADD CONSTRAINT session_activation_id_fkey FOREIGN KEY (activation_id) REFERENCES public.activation(id) ON DELETE SET NULL;
ALTER TABLE ONLY public.session
    ADD CONSTRAINT session_device_id_fkey FOREIGN KEY (device_id) REFERENCES public.device(id) ON DELETE CASCADE;
ALTER TABLE ONLY public.session
    ADD CONSTRAINT session_user_id_fkey FOREIGN KEY (user_id) REFERENCES public."user"(id) ON DELETE SET NULL;
