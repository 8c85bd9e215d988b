-- Deterministic sample data for `walcast demo`, generated in SQL (no external files):
-- 20 genres, 600 persons, 200 films with 1-3 genres, 2-6 actors, 1-2 writers and, for 4 films
-- in 5, one director. Titles, names and plots are made up from the word lists below; ids are
-- md5-derived so every run produces the same rows. Runs in a few milliseconds.
-- ON CONFLICT DO NOTHING makes a second run harmless. No psql meta-commands.

INSERT INTO content.genre (id, name, description, created, modified)
SELECT md5('walcast-demo:genre:' || g.n)::uuid, g.name, g.description,
       timestamptz '2024-01-01 00:00:00+00', timestamptz '2024-01-01 00:00:00+00'
FROM (VALUES
    (1, 'Action', 'Chases, fights and explosions.'),
    (2, 'Adventure', 'Journeys into the unknown.'),
    (3, 'Animation', 'Drawn, modelled or stop-motion worlds.'),
    (4, 'Biography', 'Lives of real people.'),
    (5, 'Comedy', 'Made to make you laugh.'),
    (6, 'Crime', 'Heists, detectives and the underworld.'),
    (7, 'Documentary', NULL),
    (8, 'Drama', 'Characters under pressure.'),
    (9, 'Family', 'For every age.'),
    (10, 'Fantasy', 'Magic, myths and other worlds.'),
    (11, 'History', 'Events that shaped the world.'),
    (12, 'Horror', 'Fear in the dark.'),
    (13, 'Music', NULL),
    (14, 'Mystery', 'A puzzle to solve.'),
    (15, 'Romance', 'Love found, lost and found again.'),
    (16, 'Sci-Fi', 'Science, space and the future.'),
    (17, 'Sport', NULL),
    (18, 'Thriller', 'Suspense until the last minute.'),
    (19, 'War', 'Soldiers and civilians in wartime.'),
    (20, 'Western', 'Outlaws and sheriffs on the frontier.')
) AS g (n, name, description)
ON CONFLICT DO NOTHING;

-- 600 distinct names: first name f = i % 30, last name (i / 30 + 7 f) % 40 is one-to-one.
INSERT INTO content.person (id, full_name, created, modified)
SELECT md5('walcast-demo:person:' || (i + 1))::uuid,
       w.first[1 + i % 30] || ' ' || w.last[1 + (i / 30 + 7 * (i % 30)) % 40],
       timestamptz '2024-01-01 00:00:00+00' + i * interval '1 second',
       timestamptz '2024-01-01 00:00:00+00' + i * interval '1 second'
FROM (SELECT
    ARRAY['James', 'Mary', 'Robert', 'Patricia', 'John', 'Jennifer', 'Michael', 'Linda',
          'David', 'Elizabeth', 'William', 'Barbara', 'Richard', 'Susan', 'Joseph', 'Jessica',
          'Thomas', 'Sarah', 'Charles', 'Karen', 'Daniel', 'Nancy', 'Matthew', 'Lisa',
          'Anthony', 'Margaret', 'Mark', 'Emily', 'Steven', 'Olivia'] AS first,
    ARRAY['Smith', 'Johnson', 'Williams', 'Brown', 'Jones', 'Garcia', 'Miller', 'Davis',
          'Rodriguez', 'Martinez', 'Hernandez', 'Lopez', 'Wilson', 'Anderson', 'Thomas',
          'Taylor', 'Moore', 'Jackson', 'Martin', 'Lee', 'Thompson', 'White', 'Harris', 'Clark',
          'Lewis', 'Robinson', 'Walker', 'Young', 'Allen', 'King', 'Wright', 'Scott', 'Green',
          'Baker', 'Adams', 'Nelson', 'Hill', 'Campbell', 'Mitchell', 'Carter'] AS last) AS w,
     generate_series(0, 599) AS i
ON CONFLICT DO NOTHING;

INSERT INTO content.film_work (id, title, description, creation_date, rating, type, created, modified)
SELECT md5('walcast-demo:film:' || n)::uuid,
       -- m = n / 4 and q = m / 20 make every title unique within its pattern (hence overall).
       CASE n % 4
           WHEN 0 THEN 'The ' || w.adj[1 + m % 20] || ' ' || w.noun[1 + (3 * m + q) % 20]
           WHEN 1 THEN w.noun[1 + m % 20] || 's of ' || w.place[1 + (3 * m + q) % 10]
           WHEN 2 THEN 'The ' || w.noun[1 + m % 20] || ' and the ' || w.noun[1 + (m + 1 + 3 * q) % 20]
           ELSE w.adj[1 + m % 20] || ' ' || w.noun[1 + (7 * m + 2 + q) % 20] || ' '
                || (ARRAY['II', 'III', 'IV'])[1 + m % 3]
       END,
       CASE WHEN n % 5 = 0 THEN NULL  -- one film in five has no plot
            ELSE 'In ' || w.place[1 + (n * 7) % 10] || ', ' || w.who[1 + (n * 3) % 10] || ' '
                 || w.what[1 + (n * 5) % 8] || '.'
                 || CASE n % 6 WHEN 0 THEN ' Based on a true story.'
                               WHEN 3 THEN ' Nothing will ever be the same.' ELSE '' END
       END,
       date '1950-01-01' + (n * 2971) % 27000,
       CASE WHEN n = 200 THEN NULL ELSE round(1 + ((n * 37) % 90) / 10.0, 1)::double precision END,
       CASE WHEN n % 8 = 0 THEN 'tv_show' ELSE 'movie' END,
       timestamptz '2024-01-01 00:00:00+00' + n * interval '1 minute',
       timestamptz '2024-01-01 00:00:00+00' + n * interval '1 minute'
FROM (SELECT
    ARRAY['Silent', 'Broken', 'Golden', 'Hidden', 'Last', 'Crimson', 'Midnight', 'Frozen', 'Wild',
          'Distant', 'Burning', 'Lost', 'Electric', 'Quiet', 'Savage', 'Endless', 'Hollow', 'Iron',
          'Secret', 'Northern'] AS adj,
    ARRAY['River', 'Empire', 'Garden', 'Horizon', 'Harbor', 'Kingdom', 'Mirror', 'Storm',
          'Frontier', 'Orchard', 'Signal', 'Voyage', 'Shadow', 'Station', 'Lantern', 'Island',
          'Desert', 'Machine', 'Winter', 'Promise'] AS noun,
    ARRAY['Brooklyn', 'Marseille', 'Havana', 'Tokyo', 'Alaska', 'Lisbon', 'Casablanca', 'Vienna',
          'Texas', 'Montana'] AS place,
    ARRAY['a retired detective', 'a widowed farmer', 'a young pilot', 'a small-town teacher',
          'an aging boxer', 'a stubborn scientist', 'a runaway heir', 'a jazz musician',
          'a rookie reporter', 'a lighthouse keeper'] AS who,
    ARRAY['must cross the country to settle an old debt',
          'uncovers a secret that could ruin a powerful family',
          'fights to keep a failing business alive',
          'searches for a friend who vanished without a trace',
          'is drawn into a heist that goes wrong from the start',
          'learns to live again after a terrible loss',
          'races against time to stop a disaster',
          'returns home to face the past'] AS what) AS w,
     generate_series(1, 200) AS n,
     LATERAL (SELECT n / 4 AS m, n / 80 AS q) AS mq
ON CONFLICT DO NOTHING;

-- 1-3 genres per film; (3n + 7k) % 20 differs for k = 0, 1, 2.
INSERT INTO content.genre_film_work (id, genre_id, film_work_id, created)
SELECT md5('walcast-demo:gfw:' || n || ':' || k)::uuid,
       md5('walcast-demo:genre:' || (1 + (n * 3 + k * 7) % 20))::uuid,
       md5('walcast-demo:film:' || n)::uuid,
       timestamptz '2024-01-01 00:00:00+00' + n * interval '1 minute'
FROM generate_series(1, 200) AS n, generate_series(0, 2) AS k
WHERE k < 1 + (n / 2) % 3
ON CONFLICT DO NOTHING;

-- Directors (none when n % 5 = 2), 2-6 actors, 1-2 writers; the person offsets are one-to-one in
-- k, so no (film, person, role) repeats, though a person may hold two roles in one film.
INSERT INTO content.person_film_work (id, person_id, film_work_id, role, created)
SELECT md5('walcast-demo:pfw:' || l.n || ':' || l.role || ':' || l.k)::uuid,
       md5('walcast-demo:person:' || l.p)::uuid,
       md5('walcast-demo:film:' || l.n)::uuid,
       l.role,
       timestamptz '2024-01-01 00:00:00+00' + l.n * interval '1 minute'
FROM (
    SELECT n, 0 AS k, 'director' AS role, 1 + (n * 31) % 600 AS p
    FROM generate_series(1, 200) AS n
    WHERE n % 5 <> 2
    UNION ALL
    SELECT n, k, 'actor', 1 + (n * 17 + k * 53) % 600
    FROM generate_series(1, 200) AS n, generate_series(0, 5) AS k
    WHERE k < 2 + (n * 7) % 5
    UNION ALL
    SELECT n, k, 'writer', 1 + (n * 11 + k * 101 + 300) % 600
    FROM generate_series(1, 200) AS n, generate_series(0, 1) AS k
    WHERE k < 1 + (n / 3) % 2
) AS l
ON CONFLICT DO NOTHING;
