-- Sample movie catalogue loaded by `walcast demo`: the `content` schema of a typical Django
-- admin panel for films (the same shape as the online-course dataset walcast targets).
-- Safe to run on a fresh database; IF NOT EXISTS everywhere so a second run is harmless too.
-- No psql meta-commands: walcast sends this file as one simple-protocol query.

CREATE SCHEMA IF NOT EXISTS content;

CREATE TABLE IF NOT EXISTS content.film_work (
    id            uuid PRIMARY KEY,
    title         text NOT NULL,
    description   text,
    creation_date date,
    rating        double precision,
    type          text NOT NULL,
    created       timestamptz DEFAULT now(),
    modified      timestamptz DEFAULT now()
);

CREATE TABLE IF NOT EXISTS content.genre (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    description text,
    created     timestamptz DEFAULT now(),
    modified    timestamptz DEFAULT now()
);

CREATE TABLE IF NOT EXISTS content.person (
    id        uuid PRIMARY KEY,
    full_name text NOT NULL,
    created   timestamptz DEFAULT now(),
    modified  timestamptz DEFAULT now()
);

CREATE TABLE IF NOT EXISTS content.genre_film_work (
    id           uuid PRIMARY KEY,
    genre_id     uuid NOT NULL REFERENCES content.genre (id) ON DELETE CASCADE,
    film_work_id uuid NOT NULL REFERENCES content.film_work (id) ON DELETE CASCADE,
    created      timestamptz DEFAULT now(),
    CONSTRAINT film_work_genre UNIQUE (film_work_id, genre_id)
);

CREATE TABLE IF NOT EXISTS content.person_film_work (
    id           uuid PRIMARY KEY,
    person_id    uuid REFERENCES content.person (id) ON DELETE CASCADE,
    film_work_id uuid REFERENCES content.film_work (id) ON DELETE CASCADE,
    role         text NOT NULL CONSTRAINT person_film_work_role_check
                     CHECK (role IN ('actor', 'director', 'writer')),
    created      timestamptz DEFAULT now(),
    CONSTRAINT film_work_person_role UNIQUE (film_work_id, person_id, role)
);

-- The unique constraints above index film_work_id first; these cover the reverse lookups
-- (and make ON DELETE CASCADE from genre/person cheap).
CREATE INDEX IF NOT EXISTS genre_film_work_genre_idx ON content.genre_film_work (genre_id);
CREATE INDEX IF NOT EXISTS person_film_work_person_idx ON content.person_film_work (person_id);
CREATE INDEX IF NOT EXISTS film_work_creation_date_idx ON content.film_work (creation_date);
